#!/bin/sh
# The gateway container's entry point: temp dirs on the tmpfs, then nginx in the foreground.
set -e
d=/var/run/gpufleet-nginx
mkdir -p "$d/tmp/body" "$d/tmp/proxy" "$d/tmp/fastcgi" "$d/tmp/uwsgi" "$d/tmp/scgi"
conf=/etc/nginx/gpufleet/nginx.conf
# an old volume without nginx.conf: the image's copy (rendered with the defaults)
[ -f "$conf" ] || conf=/usr/share/gpufleet/nginx.conf
exec nginx -e stderr -c "$conf" -g 'daemon off;'
