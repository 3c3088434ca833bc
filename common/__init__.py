"""What the API and the worker share: settings, ORM models, sessions, repositories, task names."""
