"""The shipped test kit: checks and fakes for testing resurgo and its storage.

``resurgo.testing.contract.BackendContract`` is the backend contract suite: a
pytest class every backend's tests subclass with a ``backend`` fixture, and
that a user can run against a new storage target before trusting it. The
fault-injecting backend lives in ``resurgo.backend.faults`` (the CLI can use it
in end-to-end tests). Nothing at run time imports this package.
"""
