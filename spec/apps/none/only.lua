-- The only route, and it fails to load: the server must refuse to start.
error("this app has no working route")
