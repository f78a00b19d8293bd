-- Returns something that is not a table of handlers.
return 42
