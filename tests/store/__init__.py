"""The stores: the ChatStore contract on every store, what only the SQL stores promise, and their parts."""
