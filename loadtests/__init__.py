"""Load tests of the control plane's RoomService with locust (`make loadtest`)."""
