from tcmd.server.daemon import main

main()
