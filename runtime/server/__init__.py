"""The HTTP server: app factory, guard, routes, metrics, OpenAPI document."""
