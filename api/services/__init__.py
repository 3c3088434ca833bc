"""Use cases behind the routes. Functions take a Session and return ORM rows; routes commit."""
