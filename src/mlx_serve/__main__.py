from mlx_serve.cli import main

raise SystemExit(main())
