"""Task record -> reply shapes per dialect, shared by the api and the notifier."""
