from musicfs.cli import main

raise SystemExit(main())
