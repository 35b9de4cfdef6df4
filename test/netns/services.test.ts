// Services end to end between real meshd processes on namespaced hosts, nftables backend: the
// scenario in test/lib/services-scenario.ts (the VM runs it with IPVS: test/vm/services.test.ts).
import t from 'tap';
import { servicesScenario } from '../lib/services-scenario.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

t.test('a published service across three hosts (nftables)', (t) =>
  servicesScenario(t, { backend: 'nftables' }),
);
