"""Slack itself: the messages as Block Kit (`blocks`, pure) and sending them through slack-sdk
(`sender`)."""
