from chunkstore_cli.app import main

main()
