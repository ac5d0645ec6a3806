import re,subprocess,sys
cats=[('io_uring',r'^(io_|__io_|io_uring)'),('epoll',r'(ep_|epoll)'),
('tcp/ip/skb/loopback',r'(tcp|^ip_|^__ip|skb|^net_|netif|^dev_|^__dev|loopback|bbr|^sk_|^__sk|sock|_copy_|copy_user|inet|^__napi|napi|^validate_xmit|csum|rtnl|nf_|^raw_|^__inet|fib|dst_|neigh|^process_backlog|^__kfree|kfree_skb|release_sock|lock_sock|^__x64_sys_(send|recv)|__sys_(send|recv))'),
('syscall/irq entry-exit',r'(syscall|irqentry|entry_|exit_to_user|^ret_from|^__x64_sys|^x64_sys)'),
('scheduler/wakeups',r'(schedule|switch|wake|^try_to_wake|pick_next|enqueue|dequeue|update_curr|^ttwu|futex|select_task|update_load|hrtimer|tick|idle)'),
('locks',r'(spin|mutex|lock)')]
for rt in sys.argv[1:]:
    out=subprocess.run(['perf','report','-i',rt+'.data','--stdio','--no-children','--sort','dso,sym','-g','none'],capture_output=True,text=True).stdout
    tot={}
    for l in out.splitlines():
        m=re.match(r'\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)',l)
        if not m: continue
        pct,dso,kind,sym=float(m.group(1)),m.group(2),m.group(3),m.group(4)
        if kind!='k': c='user space ('+dso+')' if dso in('uring-echo','epoll-floor') else 'user space (libs)'
        else:
            c='other kernel'
            for n,rx in cats:
                if re.search(rx,sym): c=n; break
        tot[c]=tot.get(c,0)+pct
    print(rt+': '+', '.join(f'{k} {v:.1f}%' for k,v in sorted(tot.items(),key=lambda x:-x[1])))
