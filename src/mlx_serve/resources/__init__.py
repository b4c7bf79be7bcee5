"""HTTP resources: thin classes that parse a request, call the runtime and serialise the answer."""
