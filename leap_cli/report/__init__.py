"""What a person looks at: program trees in the terminal and self-contained HTML pages."""
