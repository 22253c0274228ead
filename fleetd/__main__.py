from fleetd.cli.main import main

main()
