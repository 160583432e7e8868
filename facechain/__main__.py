from facechain.cli import main

raise SystemExit(main())
