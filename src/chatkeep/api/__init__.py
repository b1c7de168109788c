"""The HTTP edge: routes, schemas, problem details and dependencies. Nothing below knows HTTP."""
