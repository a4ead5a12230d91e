from twostep.cli import main

raise SystemExit(main())
