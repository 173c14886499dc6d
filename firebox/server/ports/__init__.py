"""Reaching a server inside a sandbox from outside: preview hosts, their access, the relay."""
