/**
 * What the embedded DNS answers, from the live service table the dispatcher sends every node
 * (ServiceEntry[]): scoped to the networks the asking task is on, so a task sees only services
 * it can reach.
 *
 *   <service> / <alias>        A   the service's VIP on a shared network (dnsrr: its active tasks)
 *   tasks.<service|alias>      A   the active tasks' addresses on shared networks
 *   <task name>                A   that task's address on a shared network
 *   <service> / tasks.<…>      SRV one record per active task: port = the service's first target
 *                                  port (0 when it publishes none), target = the task name
 *   <ip>.in-addr.arpa          PTR VIPs → service name, task addresses → task name
 *
 * A name of ours asked with another type gets NOERROR and no answer (NODATA); a single-label
 * name, or `tasks.<x>`, that is not ours is NXDOMAIN (the cluster's own namespace: forwarding
 * `web` to the Internet's resolvers only leaks names); everything else is forwarded. Only tasks
 * in state active are answered, so a stopped or failed task disappears from DNS in the same
 * view that takes it out of the load balancer.
 * Pure; may import ./wire and manager types.
 */
import type { ServiceEntry } from '../api/services.js';
import { RCODE, TYPE, ptrToIp, type Rr } from './wire.js';

export type Resolution = { kind: 'answer'; rcode: number; answers: Rr[] } | { kind: 'forward' };

interface NameEntry {
  /** A records per network id. */
  a: Map<string, string[]>;
  /** SRV targets per network id. */
  srv: Map<string, { target: string; port: number }[]>;
}

export class DnsTable {
  private names = new Map<string, NameEntry>();
  private ptrs = new Map<string, { name: string; networkId: string }[]>();
  version = 0;

  /** Replace everything with what `services` says (called on every view change). */
  update(services: readonly ServiceEntry[]): void {
    const names = new Map<string, NameEntry>();
    const ptrs = new Map<string, { name: string; networkId: string }[]>();
    const entry = (n: string): NameEntry => {
      const k = n.toLowerCase();
      let e = names.get(k);
      if (!e) {
        e = { a: new Map(), srv: new Map() };
        names.set(k, e);
      }
      return e;
    };
    const add = <T>(m: Map<string, T[]>, net: string, v: T): void => {
      const l = m.get(net);
      if (l) l.push(v);
      else m.set(net, [v]);
    };
    const ptr = (ip: string, name: string, networkId: string): void => {
      const l = ptrs.get(ip) ?? [];
      l.push({ name: name.toLowerCase(), networkId });
      ptrs.set(ip, l);
    };
    for (const s of services) {
      const active = s.endpoints.filter((e) => e.state === 'active');
      const port = s.ports[0]?.target ?? 0;
      for (const n of s.networks) {
        const net = n.networkId;
        const labels = [s.name, ...n.aliases];
        const taskIps = active
          .map((e) => ({ ip: e.addresses[net], name: e.taskName }))
          .filter((x): x is { ip: string; name: string } => x.ip !== undefined);
        for (const label of labels) {
          const e = entry(label);
          const t = entry(`tasks.${label}`);
          if (s.endpointMode === 'vip') {
            const vip = s.vips[net];
            if (vip !== undefined) add(e.a, net, vip);
          } else {
            for (const x of taskIps) add(e.a, net, x.ip);
          }
          for (const x of taskIps) {
            add(t.a, net, x.ip);
            add(e.srv, net, { target: x.name, port });
            add(t.srv, net, { target: x.name, port });
          }
        }
        const vip = s.vips[net];
        if (vip !== undefined && s.endpointMode === 'vip') ptr(vip, s.name, net);
        for (const x of taskIps) {
          add(entry(x.name).a, net, x.ip);
          ptr(x.ip, x.name, net);
        }
      }
    }
    this.names = names;
    this.ptrs = ptrs;
    this.version++;
  }

  /** Answer `name`/`type` for a task on `networks`. */
  resolve(name: string, type: number, networks: readonly string[], ttl: number): Resolution {
    const n = name.toLowerCase().replace(/\.$/, '');
    if (type === TYPE.PTR) {
      const ip = ptrToIp(n);
      const hits = ip
        ? (this.ptrs.get(ip) ?? []).filter((p) => networks.includes(p.networkId))
        : [];
      if (hits.length === 0) return { kind: 'forward' };
      const seen = new Set<string>();
      const answers: Rr[] = [];
      for (const h of hits) {
        if (seen.has(h.name)) continue;
        seen.add(h.name);
        answers.push({ name: n, type: TYPE.PTR, ttl, data: { ptr: h.name } });
      }
      return { kind: 'answer', rcode: RCODE.NOERROR, answers };
    }
    const e = this.names.get(n);
    const shared = e ? networks.filter((id) => e.a.has(id) || e.srv.has(id)) : [];
    if (!e || shared.length === 0) {
      const ours = !n.includes('.') || n.startsWith('tasks.');
      return ours ? { kind: 'answer', rcode: RCODE.NXDOMAIN, answers: [] } : { kind: 'forward' };
    }
    const answers: Rr[] = [];
    if (type === TYPE.A || type === TYPE.ANY) {
      const seen = new Set<string>();
      for (const id of shared) {
        for (const ip of e.a.get(id) ?? []) {
          if (seen.has(ip)) continue;
          seen.add(ip);
          answers.push({ name: n, type: TYPE.A, ttl, data: { a: ip } });
        }
      }
    }
    if (type === TYPE.SRV) {
      const seen = new Set<string>();
      for (const id of shared) {
        for (const s of e.srv.get(id) ?? []) {
          if (seen.has(s.target)) continue;
          seen.add(s.target);
          answers.push({
            name: n,
            type: TYPE.SRV,
            ttl,
            data: { srv: { priority: 0, weight: 0, port: s.port, target: s.target.toLowerCase() } },
          });
        }
      }
    }
    return { kind: 'answer', rcode: RCODE.NOERROR, answers };
  }

  /** The A records of `name` on `networks` (SRV targets' addresses for the additional section). */
  addresses(name: string, networks: readonly string[]): string[] {
    const e = this.names.get(name.toLowerCase());
    if (!e) return [];
    return [...new Set(networks.flatMap((id) => e.a.get(id) ?? []))];
  }
}
