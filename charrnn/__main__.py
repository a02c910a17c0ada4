from charrnn.cli.app import main

main()
