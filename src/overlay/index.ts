/**
 * The VXLAN overlay network driver (see docs/overlay.md).
 */
export * from './driver.js';
export {
  ESP_OVERHEAD,
  VXLAN_OVERHEAD,
  macFromIp,
  netnsNameFor,
  overlayMtu,
  planPeers,
  vethName,
  vxlanName,
} from './plan.js';
