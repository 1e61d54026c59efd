//! Property tests: every message survives encode and decode with arbitrary contents.

use proptest::prelude::*;

use super::{decode, encode, KvRequest, KvResponse};
use crate::testing;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_round_trips(request in testing::kv_request()) {
        let back: KvRequest = decode(&encode(&request).unwrap()).unwrap();
        prop_assert_eq!(back, request);
    }

    #[test]
    fn every_response_round_trips(response in testing::kv_response()) {
        let back: KvResponse = decode(&super::encode_response(response.clone())).unwrap();
        prop_assert_eq!(back, response);
    }

    #[test]
    fn a_cut_message_is_an_error_never_a_panic_or_another_message(
        request in testing::kv_request(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&request).unwrap();
        let at = cut.index(bytes.len());
        // Every proper prefix is refused: postcard reads fields in order, so a shorter
        // message runs out of bytes before the value is complete.
        prop_assert!(decode::<KvRequest>(&bytes[..at]).is_err());
    }
}
