// The agent's use of the peer tables when several users of one network are set up at once: a
// load-balancer namespace (useNetwork) and a task (runService) attach to the ingress network
// concurrently, and whichever publishes first must find the node in the network. The agent runs
// over a fake runtime and overlay (the kernel side is covered by test/netns) whose first
// ensureNetwork is slow, and over tables that refuse writes outside a joined network the way
// netdb does. Also: a failed setup leaves no half-registered user behind, and the periodic
// peer-table check republishes a running task's endpoint that went missing, but not one
// withdrawn on purpose.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Agent, PEER_TABLE, type PeerTables } from '../../src/agent/agent.js';
import type { TaskInfo, TaskRuntime } from '../../src/agent/runtime.js';
import type { NetworkInfo } from '../../src/api/services.js';
import type { OverlayDriver } from '../../src/overlay/index.js';
import { MeshError } from '../../src/util/errors.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** netdb's rules that matter here: join is idempotent, writes need membership. */
class Tables implements PeerTables {
  readonly joined = new Set<string>();
  readonly entries = new Map<string, Uint8Array>();
  readonly deleted = new Set<string>();
  joinNetwork(netId: string): void {
    this.joined.add(netId);
  }
  leaveNetwork(netId: string): void {
    this.joined.delete(netId);
    for (const k of [...this.entries.keys()]) if (k.startsWith(`${netId}/`)) this.entries.delete(k);
  }
  private need(netId: string, key: string): string {
    if (!this.joined.has(netId))
      throw new MeshError('ENOTFOUND', `${key}: this node is not in network ${netId}`);
    return `${netId}/${key}`;
  }
  createEntry(_table: string, netId: string, key: string, value: Uint8Array): void {
    const k = this.need(netId, key);
    if (this.entries.has(k)) throw new MeshError('ECONFLICT', `${key} exists`);
    this.entries.set(k, value);
  }
  updateEntry(_table: string, netId: string, key: string, value: Uint8Array): void {
    this.entries.set(this.need(netId, key), value);
  }
  getEntry(_table: string, netId: string, key: string): unknown {
    const v = this.entries.get(`${netId}/${key}`);
    return v ? { key, value: v, owner: 'self' } : undefined;
  }
  deleteEntry(_table: string, netId: string, key: string): void {
    const k = this.need(netId, key);
    this.entries.delete(k);
    this.deleted.add(k);
  }
  entryState(_table: string, netId: string, key: string) {
    const k = `${netId}/${key}`;
    return this.entries.has(k) ? 'visible' : this.deleted.has(k) ? 'deleted' : 'absent';
  }
  getEntries(_table: string, netId: string): { key: string; value: Uint8Array; owner: string }[] {
    return [...this.entries]
      .filter(([k]) => k.startsWith(`${netId}/`))
      .map(([k, value]) => ({ key: k.slice(netId.length + 1), value, owner: 'self' }));
  }
  watch(): () => void {
    return () => undefined;
  }
  networks(): string[] {
    return [...this.joined].sort();
  }
}

class Runtime {
  readonly tasks = new Map<string, TaskInfo>();
  create(o: { id: string; name?: string; cmd: string[] }): Promise<TaskInfo> {
    const info: TaskInfo = {
      id: o.id,
      name: o.name ?? o.id,
      state: 'created',
      cmd: o.cmd,
      netns: `fake-${o.id}`,
      netnsPath: `/nonexistent/fake-${o.id}`,
    } as TaskInfo;
    this.tasks.set(o.id, info);
    return Promise.resolve(info);
  }
  start(id: string): Promise<void> {
    const i = this.tasks.get(id);
    if (i) i.state = 'running';
    return Promise.resolve();
  }
  /** Like a process given a grace period: running for a while after the stop. */
  async stop(id: string): Promise<void> {
    await sleep(20);
    const i = this.tasks.get(id);
    if (i) i.state = 'exited';
  }
  remove(id: string): Promise<void> {
    this.tasks.delete(id);
    return Promise.resolve();
  }
  get(id: string): TaskInfo | undefined {
    return this.tasks.get(id);
  }
  close(): void {}
}

/** The first ensureNetwork of each network takes `slowMs` (or fails, when `failFirst`). */
class Overlay {
  readonly seen = new Set<number>();
  constructor(
    private readonly slowMs: number,
    private failFirst = false,
  ) {}
  async ensureNetwork(spec: { vni: number }): Promise<{ ns: string; mtu: number }> {
    if (!this.seen.has(spec.vni)) {
      this.seen.add(spec.vni);
      await sleep(this.slowMs);
      if (this.failFirst) {
        this.failFirst = false;
        this.seen.delete(spec.vni);
        throw new MeshError('EOVERLAY', `ensure network vni ${spec.vni}: busy`);
      }
    }
    return { ns: 'fake', mtu: 1450 };
  }
  attach(_vni: number, a: { ifname?: string; ip: string }): Promise<unknown> {
    const last = a.ip.split('.').map((x) => Number(x).toString(16).padStart(2, '0'));
    return Promise.resolve({ ifname: a.ifname ?? 'eth0', mac: `02:42:${last.join(':')}` });
  }
  detach(): Promise<void> {
    return Promise.resolve();
  }
  setPeers(): Promise<unknown> {
    return Promise.resolve({ conflicts: [] });
  }
  removeNetwork(vni: number): Promise<void> {
    this.seen.delete(vni);
    return Promise.resolve();
  }
  peers(): unknown[] {
    return [];
  }
  close(): void {}
}

const INGRESS: NetworkInfo = {
  id: 'ingressnet',
  name: 'ingress',
  vni: 4096,
  subnets: [{ subnet: '10.0.0.0/24', gateway: '10.0.0.1' }],
  internal: true, // no gateway bridge: the fake runtime has no namespace to plug it into
  encrypted: false,
  ingress: true,
};

function setup(t: Test, overlay: Overlay): { agent: Agent; tables: Tables; rt: Runtime } {
  const dir = mkdtempSync(join(tmpdir(), 'mesh-agent-tables-'));
  const tables = new Tables();
  const rt = new Runtime();
  const agent = Agent.fromParts(
    {
      dataDir: dir,
      vtep: '198.18.0.1',
      dataPathPort: 4789,
      netnsPrefix: 'fake-',
      tables,
      manager: () => Promise.reject(new Error('no managers here')),
    },
    rt as unknown as TaskRuntime,
    overlay as unknown as OverlayDriver,
  );
  t.teardown(() => {
    agent.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { agent, tables, rt };
}

function task(id: string, address: string) {
  return {
    id,
    name: `web.${id}`,
    serviceId: 'svc',
    cmd: ['true'],
    env: {},
    attachments: [{ net: INGRESS, address }],
  };
}

t.test(
  'a task that publishes before the load balancer finishes joining is published',
  async (t) => {
    const { agent, tables } = setup(t, new Overlay(30));
    // The load balancer registers first (and so counts as the network's first user), then waits
    // on the slow ensureNetwork while the task's whole setup runs.
    const lb = agent.useNetwork(INGRESS, 'lb');
    const view = await agent.runService(task('t1', '10.0.0.5'));
    await lb;
    t.equal(view.state, 'running');
    t.ok(tables.getEntry(PEER_TABLE, INGRESS.id, 't1.ingressnet'), 'task endpoint published');
    t.same(tables.networks(), [INGRESS.id]);
    agent.publishEndpoint(INGRESS.id, 'lb-n1.ingressnet', '10.0.0.8', '02:42:0a:00:00:08');
    t.ok(tables.getEntry(PEER_TABLE, INGRESS.id, 'lb-n1.ingressnet'), 'lb endpoint published');
  },
);

t.test('a failed network setup leaves no user behind; the retry joins', async (t) => {
  const { agent, tables } = setup(t, new Overlay(5, true));
  await t.rejects(agent.useNetwork(INGRESS, 'lb'), { code: 'EOVERLAY' });
  t.same(tables.networks(), [], 'not joined after the failure');
  t.throws(
    () => agent.publishEndpoint(INGRESS.id, 'lb-n1.ingressnet', '10.0.0.8', '02:42:0a:00:00:08'),
    { code: 'ENOTFOUND' },
    'publishing for a network not in use is refused',
  );
  await agent.useNetwork(INGRESS, 'lb');
  t.same(tables.networks(), [INGRESS.id], 'the retry set it up and joined');
  agent.publishEndpoint(INGRESS.id, 'lb-n1.ingressnet', '10.0.0.8', '02:42:0a:00:00:08');
  await agent.unuseNetwork(INGRESS.id, 'lb');
  t.same(tables.networks(), [], 'left with its last user');
});

t.test(
  'the peer-table check republishes a missing endpoint of a running task, not of a stopping one',
  async (t) => {
    const { agent, tables } = setup(t, new Overlay(0));
    await agent.runService(task('t1', '10.0.0.5'));
    await agent.runService(task('t2', '10.0.0.6'));
    t.equal(agent.checkPeerTables(), 0, 'nothing to repair');

    tables.deleteEntry(PEER_TABLE, INGRESS.id, 't1.ingressnet');
    t.equal(agent.checkPeerTables(), 1, 'one repair');
    t.ok(tables.getEntry(PEER_TABLE, INGRESS.id, 't1.ingressnet'), 't1 is back');

    tables.leaveNetwork(INGRESS.id);
    t.equal(agent.checkPeerTables(), 3, 'rejoined and both endpoints republished');
    t.same(tables.networks(), [INGRESS.id]);

    const stopping = agent.stop('t2', 1000);
    t.notOk(tables.getEntry(PEER_TABLE, INGRESS.id, 't2.ingressnet'), 'stop withdrew t2');
    t.equal(agent.checkPeerTables(), 0, 'a stopping (still running) task is not republished');
    await stopping;
    t.equal(agent.checkPeerTables(), 0, 'nor a stopped one');
    t.equal(agent.counters.repairs, 4);
  },
);
