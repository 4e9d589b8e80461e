from tcmd.daemon import main

main()
