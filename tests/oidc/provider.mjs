// A real OpenID provider for the sign-in tests: panva's oidc-provider (OpenID Certified), with its
// development login form (any account name, no password) and the accounts below. Usage:
//   node provider.mjs PORT CLIENTS_JSON
// CLIENTS_JSON: the registered clients, oidc-provider's client metadata.
import Provider from "oidc-provider";

const [port, clients] = [Number(process.argv[2]), JSON.parse(process.argv[3])];
const ACCOUNTS = {
  "li.wei": { email: "li.wei@example.org", email_verified: true, name: "李伟", groups: ["staff"] },
  "ann": { email: "ann@example.org", email_verified: true, name: "Ann Admin", groups: ["staff", "confmeet-admins"] },
  "eve": { email: "eve@elsewhere.example", email_verified: true, name: "Eve Outside", groups: [] },
  "unverified": { email: "unverified@example.org", email_verified: false, name: "Not Verified", groups: ["staff"] },
};

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients,
  async findAccount(ctx, id) {
    const account = ACCOUNTS[id];
    return account && { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"], groups: ["groups"] },
  scopes: ["openid", "email", "profile", "groups"],
  pkce: { required: () => true },
  cookies: { keys: ["confmeet test provider"] },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
});
provider.proxy = false;
provider.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
