from optcmp.cli import main

main()
