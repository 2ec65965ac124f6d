from sanitizer.cli import main

main()
