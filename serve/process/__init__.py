"""Process set-up of a Serve edge: which HTTP ingress Ray runs (`ingress`, chosen before Ray
starts) and starting Serve's HTTP proxy with retries (`startup`)."""
