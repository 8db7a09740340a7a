from leap_cli.cli import main

main()
