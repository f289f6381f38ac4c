from slimops.cli import main

raise SystemExit(main())
