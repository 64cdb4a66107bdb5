from llmrelay.cli import main

raise SystemExit(main())
