echo "nobody:x:65534:65534:nobody:/:/bin/sh" >> /etc/passwd
echo "nogroup:x:65534:" >> /etc/group
uname -r
echo "io_uring_disabled default: $(cat /proc/sys/kernel/io_uring_disabled)"
try() {
  v=$1; who=$2; r=$3
  echo "== io_uring_disabled=$v user=$who runtime=$r"
  if [ "$who" = root ]; then
    uring-echo --runtime $r --listen 127.0.0.1:0 >/tmp/out 2>/tmp/err &
  else
    su -s /bin/sh nobody -c "exec $(command -v uring-echo) --runtime $r --listen 127.0.0.1:0" >/tmp/out 2>/tmp/err &
  fi
  pid=$!
  i=0
  while [ $i -lt 100 ] && ! grep -q listening /tmp/out && kill -0 $pid 2>/dev/null; do sleep 0.1; i=$((i+1)); done
  cat /tmp/out
  grep -E "error|features" /tmp/err
  kill $pid 2>/dev/null
  wait $pid
  echo "exit=$?"
}
for v in 2 1 0; do
  echo $v > /proc/sys/kernel/io_uring_disabled
  for who in root nobody; do
    for r in uring uring-multishot epoll; do try $v $who $r; done
  done
done
