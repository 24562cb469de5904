from stigmem_node.cli import main

raise SystemExit(main())
