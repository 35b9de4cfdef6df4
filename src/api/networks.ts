/**
 * Overlay networks on the API: what `net create` sends (POST /v1/networks) and what `net ls`
 * gets back. Pure types; imports nothing.
 */

export interface SubnetSpec {
  subnet?: string;
  gateway?: string;
  ipRange?: string;
}

export interface NetworkSpec {
  name: string;
  driver?: string;
  subnets?: readonly SubnetSpec[];
  attachable?: boolean;
  internal?: boolean;
  /** Refused until ESP is programmed (fail closed). */
  encrypted?: boolean;
  mtu?: number;
  labels?: Readonly<Record<string, string>>;
  ingress?: boolean;
}

/** One row of `net ls` (GET /v1/networks). */
export interface NetworkRow {
  id: string;
  name: string;
  driver: 'overlay';
  vni: number;
  subnets: string[];
  attachable: boolean;
  internal: boolean;
  ingress: boolean;
  encrypted: boolean;
  tasks: number;
}
