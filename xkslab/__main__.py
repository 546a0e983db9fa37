from xkslab.cli import main

main()
