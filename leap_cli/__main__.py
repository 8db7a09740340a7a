from leap_cli.entry import main

main()
