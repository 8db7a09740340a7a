"""Action programs: schema and semantic validation, vocabularies and training targets, prompts, backends,
and the generation stage (``leap generate-programs`` / ``leap validate-programs``)."""
