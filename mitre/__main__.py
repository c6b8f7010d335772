from mitre.cli import main

main()
