from tcmd.server.main import main

main()
