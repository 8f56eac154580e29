"""Where jobs run: `base` says what a driver is, `registry` which ones there are, and each
other module is one driver that knows only `base`."""
