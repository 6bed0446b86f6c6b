"""The control loop's parts: what it decides (actions) and how it is told apart from how it is applied."""
