"""The HTTP layer: the app (app.py), what every request goes through (middleware, security, body), and
one module per protocol spoken (dialects/). It depends on the core's `Service` protocol, never on MLX."""
