from llamapack.runtime.cli import main

raise SystemExit(main())
