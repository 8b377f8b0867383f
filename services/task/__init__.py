"""A task: the pure fold of its events into a record (`fold`) and its named transitions, the only code
that makes a task event (`events.TaskEvents`)."""
