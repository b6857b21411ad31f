"""Named checkpoints: the registry table, download and checksum verification, safe reading of
state dicts, and resolving a name or local file to one model source."""
