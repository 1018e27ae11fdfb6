from bioft_tutorial.bench import main

raise SystemExit(main())
