"""omnistream's tests: a package, so that every layer imports the shared helpers as ``tests.support``."""
