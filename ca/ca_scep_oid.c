/*  ca_scep_oid — the SCEP signed-attribute OIDs (RFC 8894 §3.2.1), registered
 *  with OpenSSL once. Shared by the server (ca_scep) and the test client
 *  (ca_scepc), and kept apart so the client builds without the server.
 */
#include "ca_scep.h"

#include <openssl/objects.h>

static ca_scep_nids_t s_nids;

static int s_obj(const char *oid, const char *sn, const char *ln)
{
    int nid = OBJ_txt2nid(oid);
    return nid != NID_undef ? nid : OBJ_create(oid, sn, ln);
}

const ca_scep_nids_t *ca_scep_nids(void)
{
    if (!s_nids.message_type) {
        s_nids.message_type = s_obj("2.16.840.1.113733.1.9.2", "messageType", "messageType");
        s_nids.pki_status = s_obj("2.16.840.1.113733.1.9.3", "pkiStatus", "pkiStatus");
        s_nids.fail_info = s_obj("2.16.840.1.113733.1.9.4", "failInfo", "failInfo");
        s_nids.sender_nonce = s_obj("2.16.840.1.113733.1.9.5", "senderNonce", "senderNonce");
        s_nids.recipient_nonce =
            s_obj("2.16.840.1.113733.1.9.6", "recipientNonce", "recipientNonce");
        s_nids.transaction_id = s_obj("2.16.840.1.113733.1.9.7", "transID", "transactionID");
    }
    return &s_nids;
}
