"""Pure renderers of /snapshot.json (a dict) to text: no I/O here, the CLI fetches and prints."""
